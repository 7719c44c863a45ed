cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
inputs:
  message:
    type: strnig
outputs: []
