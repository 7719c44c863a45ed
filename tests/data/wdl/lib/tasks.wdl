version 1.0

task shout {
  input { File infile }
  command <<<
    tr a-z A-Z < "~{infile}" > upper.txt
  >>>
  output { File out = "upper.txt" }
  runtime { docker: "ubuntu:22.04" }
}

task count_chars {
  input { File text }
  command <<<
    wc -c < "~{text}" | tr -d ' '
  >>>
  output { String n = read_string(stdout()) }
  runtime { docker: "ubuntu:22.04" }
}

task greet {
  input { String name }
  command <<<
    echo "hello ~{name}"
  >>>
  output { String line = read_string(stdout()) }
  runtime { docker: "ubuntu:22.04" }
}
