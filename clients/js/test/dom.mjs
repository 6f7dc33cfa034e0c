// A jsdom window as the global browser environment, for the React and Vue tests.
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>", { url: "http://localhost/" });
const { window } = dom;
const names = ["window", "document", "navigator", "HTMLElement", "HTMLInputElement", "HTMLFormElement",
  "Element", "Node", "Text", "Document", "ShadowRoot", "Event", "MouseEvent", "KeyboardEvent", "InputEvent", "FocusEvent",
  "SVGElement", "MutationObserver", "getComputedStyle", "requestAnimationFrame", "cancelAnimationFrame"];
for (const name of names) {
  const value = window[name];
  const bound = typeof value === "function" && /^[a-z]/.test(name) ? value.bind(window) : value;
  Object.defineProperty(globalThis, name, { value: bound, configurable: true, writable: true });
}
// Updates come from a real server, outside act(): render them as a browser would.
globalThis.IS_REACT_ACT_ENVIRONMENT = false;
export { dom };
