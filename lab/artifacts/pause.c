/* pause: the sandbox ("infra") process of every pod in the lab.
 *
 * Sleeps forever, exits 0 on SIGINT/SIGTERM, reaps zombies on SIGCHLD (it is PID 1 of a
 * pod that shares its PID namespace). Same behaviour as Kubernetes' build/pause/linux/pause.c;
 * written for the lab, built by lab/artifacts/build with `gcc -static`.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "unknown"
#endif

static void sigdown(int signo) {
  psignal(signo, "Shutting down, got signal");
  exit(0);
}

static void sigreap(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0)
    ;
}

int main(int argc, char **argv) {
  struct sigaction down, reap;

  if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
    printf("pause.c %s (kthw lab)\n", VERSION);
    return 0;
  }
  if (getpid() != 1)
    fprintf(stderr, "Warning: pause should be the first process\n");

  memset(&down, 0, sizeof down);
  down.sa_handler = sigdown;
  if (sigaction(SIGINT, &down, NULL) < 0 || sigaction(SIGTERM, &down, NULL) < 0)
    return 1;

  memset(&reap, 0, sizeof reap);
  reap.sa_handler = sigreap;
  reap.sa_flags = SA_NOCLDSTOP;
  if (sigaction(SIGCHLD, &reap, NULL) < 0)
    return 2;

  for (;;)
    pause();
  return 42; /* not reached */
}
