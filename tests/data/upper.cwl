cwlVersion: v1.2
class: CommandLineTool
baseCommand: [tr, a-z, A-Z]
stdin: $(inputs.infile.path)
inputs:
  infile: File
outputs:
  upper:
    type: stdout
stdout: upper.txt
