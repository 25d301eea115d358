/* jf-wc: count lines, words and bytes of standard input. */
#include <ctype.h>
#include <stdio.h>

int
main(void)
{
	long lines = 0, words = 0, bytes = 0;
	int c, inword = 0;

	while ((c = getchar()) != EOF) {
		bytes++;
		if (c == '\n')
			lines++;
		if (isspace(c))
			inword = 0;
		else if (!inword) {
			inword = 1;
			words++;
		}
	}
	printf("%ld %ld %ld\n", lines, words, bytes);
	return 0;
}
