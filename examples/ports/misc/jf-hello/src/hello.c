/* jf-hello: print libjf's greeting for the name given, or "world". */
#include <stdio.h>

#include <jf.h>

int
main(int argc, char *argv[])
{
	puts(jf_greeting(argc > 1 ? argv[1] : "world"));
	return 0;
}
