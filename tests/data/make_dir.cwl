cwlVersion: v1.2
class: CommandLineTool
baseCommand:
  - sh
  - -c
  - 'mkdir -p d/sub && printf "%s" "$0" > d/a.txt && head -c 300000 /dev/urandom > d/sub/big.bin && echo top > "top file.txt"'
inputs:
  text:
    type: string
    inputBinding: {position: 1}
outputs:
  dir:
    type: Directory
    outputBinding: {glob: d}
  top:
    type: File
    outputBinding: {glob: top file.txt}
