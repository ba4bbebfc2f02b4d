/* The two libsystemd functions Debian's static libdbus-1.a calls, for linking weaver
 * statically (lab/artifacts/build weave).
 *
 * weaver captures packets with libpcap; Debian builds libpcap with D-Bus capture support, so
 * its libpcap.a needs libdbus-1.a, and Debian builds that with systemd socket activation, so
 * it needs sd_listen_fds and sd_is_socket from libsystemd, of which Debian ships no static
 * library. Both are only called by _dbus_listen_systemd_sockets, i.e. by a D-Bus *server*
 * started by systemd; weaver never opens a D-Bus connection at all (only pcap's "dbus-system"
 * and "dbus-session" capture devices would). These answer as libsystemd does for a process
 * that systemd did not hand sockets to: no file descriptors, not a socket.
 */
int sd_listen_fds(int unset_environment) {
  (void)unset_environment;
  return 0;
}

int sd_is_socket(int fd, int family, int type, int listening) {
  (void)fd;
  (void)family;
  (void)type;
  (void)listening;
  return 0;
}
