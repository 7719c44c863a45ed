cwlVersion: v1.2
class: Workflow
inputs:
  infile: File
outputs: []
steps:
  shout:
    run: upper.cwl
    in: {infile: infile}
    out: [upper]
  explode:
    run: fail_file.cwl
    in: {infile: shout/upper}
    out: []
