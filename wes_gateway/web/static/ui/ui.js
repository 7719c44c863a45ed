// The live parts of the run browser; the pages read fine without this file.
"use strict";
(function () {
  // From the origin, never from the page's own URL: a URL with credentials in it (as a
  // browser may keep for Basic auth) cannot be fetched.
  const api = location.origin + document.body.dataset.api;
  const stateClass = { QUEUED: "waiting", INITIALIZING: "waiting", CANCELING: "waiting", RUNNING: "running",
    COMPLETE: "ok", EXECUTOR_ERROR: "failed", SYSTEM_ERROR: "failed", CANCELED: "canceled" };
  const terminal = new Set(["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"]);

  function paint(element, state) {
    element.textContent = state;
    element.dataset.state = state;
    element.className = "state " + (stateClass[state] || "");
  }

  // Run list: refresh the states of runs that have not ended, without reloading.
  const rows = Array.from(document.querySelectorAll("table.runs tr[data-run]"));
  if (rows.length) {
    const refresh = async () => {
      const open = rows.filter((row) => !terminal.has(row.querySelector(".state").dataset.state));
      await Promise.all(open.map(async (row) => {
        const response = await fetch(`${api}/runs/${row.dataset.run}/status`, { credentials: "same-origin" });
        if (response.ok) paint(row.querySelector(".state"), (await response.json()).state);
      }));
      if (open.length) setTimeout(refresh, 2000);
    };
    setTimeout(refresh, 2000);
  }

  // Run page: follow the events stream from where the page left off.
  const run = document.querySelector("article.run");
  if (run && run.dataset.terminal !== "yes" && window.EventSource) {
    const log = document.getElementById("log");
    const source = new EventSource(`${api}/runs/${run.dataset.run}/events?after=${run.dataset.after}`);
    let reload = null;
    source.addEventListener("log", (event) => {
      const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent += JSON.parse(event.data).text;
      if (stick) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("state", (event) => {
      const data = JSON.parse(event.data);
      paint(document.getElementById("state"), data.state);
      const item = document.createElement("li");
      item.innerHTML = `<span class="state ${stateClass[data.state] || ""}"></span> <time></time>`;
      item.querySelector("span").textContent = data.state;
      item.querySelector("time").textContent = data.time;
      document.getElementById("transitions").appendChild(item);
    });
    // Tasks and outputs are drawn by the server: a finished task or the end redraws them.
    source.addEventListener("task", () => { clearTimeout(reload); reload = setTimeout(() => location.reload(), 1500); });
    source.addEventListener("end", () => { source.close(); location.reload(); });
  }

  // Submit page: JSON checked as it is typed; a refusal shown next to its field.
  const form = document.getElementById("submit");
  if (form) {
    const jsonFields = ["workflow_params", "tags", "workflow_engine_parameters"];
    for (const name of jsonFields) {
      const field = document.getElementById(name);
      field.addEventListener("input", () => {
        const error = document.getElementById(`error-${name}`);
        try { JSON.parse(field.value || "{}"); error.textContent = ""; field.removeAttribute("aria-invalid"); }
        catch (problem) { error.textContent = `Not valid JSON: ${problem.message}`; field.setAttribute("aria-invalid", "true"); }
      });
    }
    const type = document.getElementById("workflow_type");
    const version = document.getElementById("workflow_type_version");
    const sync = () => {
      for (const option of version.options) option.hidden = option.dataset.type !== type.value;
      const first = Array.from(version.options).find((option) => !option.hidden);
      if (first && version.selectedOptions[0] && version.selectedOptions[0].hidden) version.value = first.value;
    };
    type.addEventListener("change", sync);
    sync();
    const files = document.getElementById("workflow_attachment");
    const url = document.getElementById("workflow_url");
    files.addEventListener("change", () => { if (!url.value && files.files.length) url.value = files.files[0].name; });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      for (const error of form.querySelectorAll(".field-error")) error.textContent = "";
      let response;
      try {
        response = await fetch(`${api}/runs`, { method: "POST", body: new FormData(form), credentials: "same-origin" });
      } catch (problem) {
        document.getElementById("error-form").textContent = `Not sent: ${problem.message}`;
        return;
      }
      const body = await response.json().catch(() => ({ msg: `HTTP ${response.status}` }));
      if (response.ok) { location.href = `${document.body.dataset.ui}/runs/${body.run_id}`; return; }
      const message = body.msg || `HTTP ${response.status}`;
      const named = ["workflow_params", "workflow_type_version", "workflow_url", "tags", "workflow_engine_parameters", "workflow_attachment"]
        .find((name) => message.startsWith(name) || message.includes(` ${name}`));
      document.getElementById(`error-${named || "form"}`).textContent = message;
    });
  }
})();
