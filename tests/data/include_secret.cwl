cwlVersion: v1.2
class: CommandLineTool
doc:
  $include: /etc/hostname
baseCommand: echo
inputs: []
outputs: []
