cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  messages: string[]
outputs:
  outs:
    type: File[]
    outputSource: say/out
steps:
  say:
    run: echo.cwl
    scatter: message
    in: {message: messages}
    out: [out]
