/* libjf: the demo ports tree's C library. */
#include <stdio.h>

#include "jf.h"

#ifndef JF_VERSION
#define JF_VERSION "unknown"
#endif

const char *
jf_version(void)
{
	return JF_VERSION;
}

const char *
jf_greeting(const char *who)
{
	static char buf[256];

	snprintf(buf, sizeof(buf), "Hello, %s, from libjf %s", who, jf_version());
	return buf;
}
