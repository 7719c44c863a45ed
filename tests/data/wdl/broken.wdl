version 1.0

workflow broken {
  call missing_task
}
