cwlVersion: v1.2
class: CommandLineTool
doc: echo.cwl, in a container (the tests' stand-in debian image; bench/e2e's container case).
requirements:
  DockerRequirement: {dockerPull: docker.io/debian:stable-slim}
baseCommand: echo
inputs:
  message: {type: string, inputBinding: {position: 1}}
outputs:
  out: {type: stdout}
stdout: out.txt
