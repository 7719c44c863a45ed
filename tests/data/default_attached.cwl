cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  infile:
    type: File
    default: {class: File, location: greeting.txt}
    inputBinding: {position: 1}
outputs:
  out: {type: stdout}
stdout: out.txt
