/*
 * The KVM probe guest: one 512-byte boot sector. It prints a marker from real mode, makes 20,000
 * port writes (each one a VM exit under KVM), switches to 64-bit long mode with paging (where
 * broken nested virtualization tends to stall), prints a second marker and exits QEMU through
 * the isa-debug-exit device. Assemble: as --64 -o p.o probe-guest.S &&
 * ld -m elf_x86_64 -Ttext=0x7c00 -e 0x7c00 --oformat binary -o probe.bin p.o
 */
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    cld
    movw $msg1, %si
    movw $0x3f8, %dx
1:  lodsb
    testb %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  movw $20000, %cx
3:  outb %al, $0x80
    loop 3b
    /* identity-map the first 2 MiB with one large page: PML4 0x1000, PDPT 0x2000, PD 0x3000 */
    movw $0x1000, %di
    movw $0x1800, %cx
    xorw %ax, %ax
    rep stosw
    movw $0x2003, 0x1000
    movw $0x3003, 0x2000
    movw $0x0083, 0x3000
    lgdt gdtdesc
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $0x08, $lm
    .code64
lm:
    movl $msg2, %esi
    movw $0x3f8, %dx
4:  lodsb
    testb %al, %al
    jz 5f
    outb %al, %dx
    jmp 4b
5:  movw $0xf4, %dx
    xorb %al, %al
    outb %al, %dx
6:  hlt
    jmp 6b
    .p2align 3
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
gdtdesc:
    .word 15
    .long gdt
msg1: .asciz "ORB-PROBE-START\r\n"
msg2: .asciz "ORB-PROBE-OK\r\n"
    .org 510
    .word 0xaa55
