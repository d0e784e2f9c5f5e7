// Upload a model version through the REST API with a progress bar; while any version is
// validating, the page re-reads itself every 2 s so the status changes live.
(function () {
  "use strict";
  const form = document.getElementById("upload");
  const versions = document.getElementById("versions");
  let uploading = false;
  // Re-read the page while a version validates, unless the user is filling in an upload.
  function busy() {
    if (!form) return false;
    return uploading || form.querySelector("#upload-file").files.length > 0 ||
      ["inputs", "outputs"].some((name) => form.elements[name].value);
  }
  if (versions && versions.dataset.validating === "1") {
    const again = () => (busy() ? setTimeout(again, 2000) : location.reload());
    setTimeout(again, 2000);
  }
  if (!form) return;
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const error = document.getElementById("upload-error");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = new FormData();
    const file = form.querySelector("#upload-file").files[0];
    if (!file) { error.textContent = "choose a model file first"; return; }
    body.append("file", file);
    ["format", "inputs", "outputs"].forEach((name) => { const value = form.elements[name].value; if (value) body.append(name, value); });
    const request = new XMLHttpRequest();
    uploading = true;
    request.open("POST", form.dataset.url);
    request.setRequestHeader("X-CSRFToken", form.elements.csrfmiddlewaretoken.value);
    request.setRequestHeader("Accept", "application/json");
    bar.hidden = false;
    request.upload.onprogress = (e) => { if (e.lengthComputable) { bar.value = Math.round((100 * e.loaded) / e.total); status.textContent = `${bar.value} % of ${(e.total / 1048576).toFixed(1)} MiB`; } };
    request.onload = () => {
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
      if (request.status >= 200 && request.status < 300) {
        status.textContent = `uploaded as v${answer.number}; validating…`;
        uploading = false;
        form.reset();
        setTimeout(() => location.reload(), 500);
      } else {
        bar.hidden = true;
        uploading = false;
        const fields = answer.field_errors ? " (" + Object.entries(answer.field_errors).map(([k, v]) => `${k}: ${[].concat(v).join(", ")}`).join("; ") + ")" : "";
        error.textContent = (answer.error || `upload failed (${request.status})`) + fields;
      }
    };
    request.onerror = () => { bar.hidden = true; uploading = false; error.textContent = "the upload was interrupted; try again"; };
    request.send(body);
  });
})();
