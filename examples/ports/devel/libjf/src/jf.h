/* libjf: the demo ports tree's C library. */
#ifndef JF_H
#define JF_H

/* "Hello, <who>, from libjf <version>" in a static buffer. */
const char *jf_greeting(const char *who);
/* The library's version, e.g. "1.2.0". */
const char *jf_version(void);

#endif
