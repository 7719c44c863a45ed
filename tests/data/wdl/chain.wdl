version 1.0

import "lib/tasks.wdl" as lib

workflow chain {
  input {
    File infile
    Array[String] names
  }
  call lib.shout { input: infile = infile }
  call lib.count_chars { input: text = shout.out }
  scatter (name in names) {
    call lib.greet { input: name = name }
  }
  output {
    File upper = shout.out
    String count = count_chars.n
    Array[String] greetings = greet.line
  }
}
