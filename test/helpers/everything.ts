/** server-everything in Streamable HTTP mode as a real upstream, via the demo launcher. */
export { startEverything } from '../../src/demo/everything.js';
