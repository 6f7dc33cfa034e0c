// Light or dark: the system's choice until the toggle picks one (kept in localStorage).
const KEY = "chatsock.theme";
const dark = window.matchMedia("(prefers-color-scheme: dark)");

function apply() {
  const chosen = localStorage.getItem(KEY);
  const theme = chosen === "light" || chosen === "dark" ? chosen : dark.matches ? "dark" : "light";
  document.documentElement.dataset.theme = theme;
  return theme;
}

export function initTheme() {
  apply();
  dark.addEventListener("change", apply);
  document.getElementById("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(KEY, next);
    apply();
  });
}
