cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  secret:
    type: File
    default: {class: File, location: /etc/passwd}
    inputBinding: {position: 1}
outputs:
  out: {type: stdout}
