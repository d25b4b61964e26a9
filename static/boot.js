// Loads the Kiroku island (WebAssembly). It finds the elements marked
// data-island on the page and takes over their behaviour.
import init from "/static/island/kiroku_island.js";

init().catch((err) => {
  document.documentElement.dataset.islandError = String(err);
  console.error("Kiroku island failed to start", err);
});
