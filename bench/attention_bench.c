/* placeholder: the attention benchmark is being written */
int main(void) { return 0; }
