cwlVersion: v1.2
class: Workflow
inputs:
  message: string
  seconds: int
outputs: []
steps:
  say:
    run: echo.cwl
    in: {message: message}
    out: [out]
  wait:
    run: sleep.cwl
    in: {seconds: seconds}
    out: []
