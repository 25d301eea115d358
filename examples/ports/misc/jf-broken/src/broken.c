/* jf-broken: never built (the port is IGNOREd). */
int
main(void)
{
	return 1;
}
