namespace SEmigrate.Guest.Qemu;

/// <summary>A running guest's QEMU runs as a user of its own, never root: a guest that breaks out of QEMU
/// gets that user's rights, which reach none of the host's files (everything the workers make is root's,
/// 0600 and 0700). QEMU drops to it (-runas) once it has opened its RAM, kernel, initramfs, console and
/// QMP socket; the device state goes in and out through a descriptor handed over QMP. `deploy/services.sh
/// up` makes the user (a system user with no home and no shell).</summary>
public static class QemuUser
{
    public const string Name = "semigrate-qemu";

    /// <summary>The user's name, or why QEMU cannot run as it.</summary>
    public static string Required() =>
        File.Exists("/etc/passwd") && File.ReadLines("/etc/passwd").Any(l => l.StartsWith(Name + ":", StringComparison.Ordinal)) ? Name
            : throw new InvalidOperationException($"no user {Name} for QEMU to run as (never root): `deploy/services.sh up` makes it, or `useradd --system --no-create-home --shell /usr/sbin/nologin {Name}`");
}
