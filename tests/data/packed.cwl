cwlVersion: v1.2
$graph:
  - id: main
    class: Workflow
    inputs:
      message: string
    outputs:
      out: {type: File, outputSource: say/out}
    steps:
      say:
        run: "#shout"
        in: {message: message}
        out: [out]
  - id: shout
    class: CommandLineTool
    baseCommand: echo
    arguments: ["shouted:"]
    inputs:
      message: {type: string, inputBinding: {position: 1}}
    outputs:
      out: {type: stdout}
    stdout: out.txt
  - id: whisper
    class: CommandLineTool
    baseCommand: echo
    arguments: ["whispered:"]
    inputs:
      message: {type: string, inputBinding: {position: 1}}
    outputs:
      out: {type: stdout}
    stdout: out.txt
