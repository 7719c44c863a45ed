cwlVersion: v1.2
class: CommandLineTool
baseCommand: [wc, -c]
stdin: $(inputs.infile.path)
inputs:
  infile: File
outputs:
  count:
    type: stdout
stdout: count.txt
