/* placeholder: the store benchmark is being written */
int main(void) { return 0; }
