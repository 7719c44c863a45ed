version 1.0

# bench/peers.py's WDL case: a one-line task scattered over the input strings, each task in
# its own container (runtime.docker), run by the gateway and by miniwdl alike.
workflow wdl_scatter {
  input {
    Array[String] messages
  }
  scatter (message in messages) {
    call echo { input: message = message }
  }
  output {
    Array[String] lines = echo.line
  }
}

task echo {
  input {
    String message
  }
  command <<<
    echo "~{message}"
  >>>
  output {
    String line = read_string(stdout())
  }
  runtime {
    docker: "debian:stable-slim"
  }
}
