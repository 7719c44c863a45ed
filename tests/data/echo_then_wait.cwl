cwlVersion: v1.2
class: Workflow
inputs:
  message: string
  seconds: int
outputs:
  out:
    type: File
    outputSource: wait/out
steps:
  say:
    run: echo.cwl
    in: {message: message}
    out: [out]
  wait:
    run: wait_then_cat.cwl
    in: {seconds: seconds, infile: say/out}
    out: [out]
