"""Submissions: the POST /runs body parsed once as it streams (uploads, form), the request
(RunRequest), what inputs and engine parameters may be (inputpolicy, engine_params), TRS
workflows and DRS inputs fetched, and the staged run directory. Imports engines/, host/,
files/ and store/."""
