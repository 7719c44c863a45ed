cwlVersion: v1.2
class: CommandLineTool
baseCommand: rev
inputs:
  infile:
    type: File
    inputBinding: {position: 1}
outputs:
  reversed:
    type: stdout
stdout: reversed.txt
