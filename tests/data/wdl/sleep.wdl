version 1.1

workflow napping {
  input { Int seconds }
  call nap { input: seconds = seconds }
}

task nap {
  input { Int seconds }
  command <<<
    sleep ~{seconds}
  >>>
  runtime { docker: "ubuntu:22.04" }
}
