// Console-wide behaviour: destructive buttons ask first (their question is in data-confirm,
// read as text, never as code), and the tenant switcher goes to the chosen tenant.
(function () {
  "use strict";
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", () => {
    const switcher = document.getElementById("tenant-switcher");
    if (switcher) switcher.addEventListener("change", () => switcher.form.requestSubmit());
    document.querySelectorAll("[data-copy]").forEach((button) => button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = "selected: press Ctrl+C";
      }
    }));
  });
})();
