/**
 * 127.0.0.0/8, ::1 and localhost: the hosts where plain HTTP is allowed without asking (tests,
 * local mirrors and registries). Takes a hostname or a host with a port, IPv6 with or without
 * brackets ("[::1]:5000", "::1", "127.0.0.1:8080", "localhost").
 */
export function isLoopbackHost(host: string): boolean {
  let name = host.trim().toLowerCase();
  if (name.startsWith('[')) name = name.slice(1, name.indexOf(']') < 0 ? undefined : name.indexOf(']'));
  else if (name.split(':').length === 2) name = name.replace(/:\d*$/, '');
  return name === 'localhost' || name === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name);
}
