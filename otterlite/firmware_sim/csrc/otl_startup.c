/* Cortex-M start-up for the semihosting harness: a 16-entry vector table, copy .data from
 * flash, clear .bss, enable the FPU on hard-float builds, run main, exit with its code.
 * Any fault exits with OTL_FAULT_EXIT, so a crash is told apart from an error. */
#include <stdint.h>

#define OTL_FAULT_EXIT 70

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;  /* from the linker script */
int main(void);
void otl_reset(void);
void otl_semihost_exit(int code);

static void fault(void) { otl_semihost_exit(OTL_FAULT_EXIT); }

void otl_reset(void) {
    const uint32_t *src = &_sidata;
    uint32_t *dst;
    for (dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;  /* CPACR: full access to CP10, CP11 */
    __asm__ volatile("dsb\n\tisb");
#endif
    otl_semihost_exit(main());
}

__attribute__((section(".vectors"), used)) static const uintptr_t vectors[16] = {
    (uintptr_t)&_estack, (uintptr_t)otl_reset,
    (uintptr_t)fault, (uintptr_t)fault, (uintptr_t)fault, (uintptr_t)fault, (uintptr_t)fault,  /* NMI..UsageFault */
    0, 0, 0, 0, (uintptr_t)fault, (uintptr_t)fault, 0, (uintptr_t)fault, (uintptr_t)fault};
