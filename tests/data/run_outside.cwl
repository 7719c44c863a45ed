cwlVersion: v1.2
class: Workflow
inputs: []
outputs: []
steps:
  s:
    run: /etc/wes-gateway-not-allowed.cwl
    in: []
    out: []
