// The provider and model picker, fed by GET /api/providers (what this client may choose).
const KEY = "chatsock.choice";

export class Picker {
  constructor() {
    this.provider = document.getElementById("provider");
    this.model = document.getElementById("model");
    this.offer = null;
    this.provider.addEventListener("change", () => { this.fillModels(); this.save(); });
    this.model.addEventListener("change", () => this.save());
  }

  /** Fills the picker from the `/api/providers` answer. */
  show(offer) {
    this.offer = offer;
    const saved = JSON.parse(localStorage.getItem(KEY) || "{}");
    this.provider.replaceChildren(option("", `Default (${offer.default.provider ?? "none"})`));
    for (const p of offer.providers) this.provider.append(option(p.name, p.name));
    if (offer.providers.some((p) => p.name === saved.provider)) this.provider.value = saved.provider;
    this.fillModels(saved.model);
    this.provider.hidden = false;
    this.model.hidden = false;
  }

  fillModels(wanted) {
    const chosen = this.offer?.providers.find((p) => p.name === this.provider.value);
    if (chosen === undefined) {
      this.model.replaceChildren(option("", this.offer?.default.model ?? "default model"));
      this.model.disabled = true;
      return;
    }
    const models = [...new Set([chosen.default_model, ...chosen.models])];
    this.model.replaceChildren(...models.map((m) => option(m, m === chosen.default_model ? `${m} (default)` : m)));
    this.model.disabled = models.length < 2;
    if (wanted && models.includes(wanted)) this.model.value = wanted;
  }

  save() {
    localStorage.setItem(KEY, JSON.stringify({ provider: this.provider.value, model: this.model.value }));
  }

  /** The send options: nothing for the server's defaults. */
  choice() {
    const out = {};
    if (this.provider.value) {
      out.provider = this.provider.value;
      if (this.model.value) out.model = this.model.value;
    }
    return out;
  }
}

function option(value, label) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = label;
  return el;
}

/**
 * "Think": asks the model to reason before it answers (`thinking_budget`, which
 * the demo provider and Anthropic honour; OpenAI-compatible reasoning models
 * stream their reasoning regardless). Never `reasoning_effort`: a model that
 * does not reason would refuse it. Kept in localStorage.
 */
const THINK_KEY = "chatsock.think";
export const THINKING_BUDGET = 2048;

export class ThinkToggle {
  constructor() {
    this.button = document.getElementById("think");
    this.set(localStorage.getItem(THINK_KEY) === "1");
    this.button.addEventListener("click", () => {
      this.set(!this.on);
      localStorage.setItem(THINK_KEY, this.on ? "1" : "0");
    });
  }

  set(on) {
    this.on = on;
    this.button.setAttribute("aria-pressed", String(on));
  }

  /** The send options: a thinking budget when on. */
  options() {
    return this.on ? { thinkingBudget: THINKING_BUDGET } : {};
  }
}
