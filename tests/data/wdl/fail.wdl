version 1.0

workflow failing {
  call explode
}

task explode {
  command <<<
    echo "wdl task says: boom" >&2
    exit 5
  >>>
  runtime { docker: "ubuntu:22.04" }
}
