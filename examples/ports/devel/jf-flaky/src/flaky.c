/* jf-flaky: prints that it was built. */
#include <stdio.h>

int
main(void)
{
	puts("jf-flaky built fine");
	return 0;
}
