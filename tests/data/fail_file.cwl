cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'echo "second step says: boom" >&2; exit 7', fail]
inputs:
  infile:
    type: File
    inputBinding: {position: 1}
outputs: []
