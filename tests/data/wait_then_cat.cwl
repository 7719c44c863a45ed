cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'sleep "$0"; cat "$1"']
inputs:
  seconds:
    type: int
    inputBinding: {position: 1}
  infile:
    type: File
    inputBinding: {position: 2}
outputs:
  out:
    type: stdout
stdout: waited.txt
