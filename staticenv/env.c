/*
 * whoexec's static env: the program the webhook runs as
 *
 *     /.whoexec/env WHOEXEC_IDENTITY=<token> COMMAND [ARG]...
 *
 * in pods whose images have no /usr/bin/env (distroless, scratch). It does what env(1)
 * does with such a command line, and nothing else: it sets each leading NAME=VALUE
 * assignment in the environment, then execvp()s COMMAND with its own argv, so the
 * process keeps its pid, its file descriptors and its parent (the container runtime),
 * and the program that runs is the image's own, found on the image's PATH.
 *
 * What GNU coreutils' env does, and so this one too:
 *   - an argument is an assignment while it contains '='; the name ends at the first
 *     '=' (A=1=2 sets A to "1=2"); the first argument without '=' is the command, even
 *     one that starts with '-' (`env A=1 -i` runs a program named "-i");
 *   - a leading "--" ends the options and is skipped;
 *   - the assignments are made before the command is looked up, so PATH=... among
 *     them changes where it is found (execvp reads PATH; unset, glibc searches
 *     /bin:/usr/bin), and a file without a #! line runs under /bin/sh (execvp, ENOEXEC);
 *   - when the command cannot be run: "env: 'COMMAND': <reason>" on stderr and exit
 *     status 127 when it was not found, 126 when it was found and could not be run.
 *
 * Where it differs, only for command lines the webhook never sends: options other than
 * "--" (env -i, -u, -C, -S ...) and a missing command are refused with exit status 125,
 * as env does for its own errors. env would print the environment for a missing
 * command; this program never writes to standard output, which belongs to the session
 * (kubectl cp streams a tar archive through it).
 *
 * No applets, no shell, no locale, no allocation. It must be statically linked: it is
 * copied into images that have no C library (see staticenv/build).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
	EXIT_CANCELED = 125, /* env's own failure */
	EXIT_CANNOT_INVOKE = 126,
	EXIT_ENOENT = 127,
};

static void say(const char *text)
{
	size_t left = strlen(text);
	while (left > 0) {
		ssize_t done = write(STDERR_FILENO, text, left);
		if (done < 0) {
			if (errno == EINTR)
				continue;
			return; /* nowhere else to report it */
		}
		text += done;
		left -= (size_t)done;
	}
}

/* a name as the user gave it, between quotes; control characters shown as '?' so that
 * a hostile argument cannot drive the terminal (GNU env quotes them too) */
static void say_quoted(const char *name)
{
	char buf[256];
	size_t n = 0;
	buf[n++] = '\'';
	for (const unsigned char *p = (const unsigned char *)name; *p && n < sizeof buf - 5; p++)
		buf[n++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
	if (strlen(name) > sizeof buf - 6) {
		buf[n++] = '.';
		buf[n++] = '.';
		buf[n++] = '.';
	}
	buf[n++] = '\'';
	buf[n] = '\0';
	say(buf);
}

static int fail(const char *what, const char *name, const char *reason, int status)
{
	say("env: ");
	say(what);
	if (name != NULL)
		say_quoted(name);
	if (reason != NULL) {
		say(": ");
		say(reason);
	}
	say("\n");
	return status;
}

int main(int argc, char **argv)
{
	int i = 1;
	if (i < argc && strcmp(argv[i], "--") == 0)
		i++;
	else if (i < argc && argv[i][0] == '-' && strchr(argv[i], '=') == NULL)
		return fail("options are not supported by whoexec's static env: ", argv[i], NULL,
			    EXIT_CANCELED);
	for (; i < argc && strchr(argv[i], '=') != NULL; i++) {
		/* putenv keeps the argv string itself, as GNU env does */
		if (putenv(argv[i]) != 0)
			return fail("cannot set ", argv[i], strerror(errno), EXIT_CANCELED);
	}
	if (i >= argc)
		return fail("no command to run (whoexec's static env never prints the "
			    "environment)",
			    NULL, NULL, EXIT_CANCELED);
	execvp(argv[i], &argv[i]);
	int err = errno;
	return fail("", argv[i], strerror(err), err == ENOENT ? EXIT_ENOENT : EXIT_CANNOT_INVOKE);
}
