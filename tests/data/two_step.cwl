cwlVersion: v1.2
class: Workflow
inputs:
  infile: File
outputs:
  result:
    type: File
    outputSource: reverse/reversed
steps:
  shout:
    run: tools/upper.cwl
    in: {infile: infile}
    out: [upper]
  reverse:
    run: tools/rev.cwl
    in: {infile: shout/upper}
    out: [reversed]
