// Injected before OHIF's own scripts (CDP Page.addScriptToEvaluateOnNewDocument): records what the
// radiologist would see as errors — console errors/warnings, uncaught errors, OHIF's pop-up notifications.
(() => {
  const rec = (window.__ich = { console: [], notifications: [] });
  const text = (a) => {
    if (a instanceof Error) return a.stack || String(a);
    if (a && typeof a === 'object') {
      try { return JSON.stringify(a).slice(0, 2000); } catch (e) { return String(a); }
    }
    return String(a);
  };
  for (const level of ['error', 'warn']) {
    const original = console[level].bind(console);
    console[level] = (...args) => {
      try { rec.console.push({ level, text: args.map(text).join(' ') }); } catch (e) { /* never break the page */ }
      original(...args);
    };
  }
  window.addEventListener('error', (e) => rec.console.push({ level: 'uncaught', text: `${e.message} ${text(e.error || '')}` }));
  window.addEventListener('unhandledrejection', (e) => rec.console.push({ level: 'unhandledrejection', text: text(e.reason) }));
  const timer = setInterval(() => {
    const service = window.services && window.services.uiNotificationService;
    if (!service) return;
    clearInterval(timer);
    const show = service.show.bind(service);
    service.show = (opts = {}) => {
      rec.notifications.push({ title: String(opts.title || ''), message: text(opts.message || ''), type: String(opts.type || '') });
      return show(opts);
    };
  }, 10);
})();
