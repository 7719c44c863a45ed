cwlVersion: v1.2
class: CommandLineTool
doc: Runs probe.py over a list of attempts and keeps its report (tests/test_sandbox.py).
baseCommand: python3
requirements:
  InitialWorkDirRequirement:
    listing:
      - entryname: own.txt
        entry: "the run's own output\n"
inputs:
  script:
    type: File
    inputBinding: {position: 1}
  attempts:
    type: File
    inputBinding: {position: 2}
outputs:
  report:
    type: stdout
  own:
    type: File
    outputBinding: {glob: own.txt}
stdout: report.json
