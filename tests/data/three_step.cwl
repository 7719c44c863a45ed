cwlVersion: v1.2
class: Workflow
inputs:
  infile: File
outputs:
  count:
    type: File
    outputSource: count/count
steps:
  shout:
    run: upper.cwl
    in: {infile: infile}
    out: [upper]
  reverse:
    run: rev.cwl
    in: {infile: shout/upper}
    out: [reversed]
  count:
    run: count.cwl
    in: {infile: reverse/reversed}
    out: [count]
