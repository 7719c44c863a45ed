cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'sleep "$0"; echo "$1"']
inputs:
  seconds:
    type: int
    inputBinding: {position: 1}
  message:
    type: string
    inputBinding: {position: 2}
outputs:
  out:
    type: stdout
stdout: out.txt
