--- jf-wc.c.orig
+++ jf-wc.c
@@ -1,13 +1,21 @@
 /* jf-wc: count lines, words and bytes of standard input. */
 #include <ctype.h>
 #include <stdio.h>
+#include <string.h>
+
+#include "version.h"
 
 int
-main(void)
+main(int argc, char *argv[])
 {
 	long lines = 0, words = 0, bytes = 0;
 	int c, inword = 0;
 
+	if (argc > 1 && strcmp(argv[1], "-V") == 0) {
+		printf("jf-wc %s (FreeBSD ports patch, %s)\n", JF_WC_VERSION,
+		    JF_WC_BUILT_WITH);
+		return 0;
+	}
 	while ((c = getchar()) != EOF) {
 		bytes++;
 		if (c == '\n')
