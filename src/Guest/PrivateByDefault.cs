using SEmigrate.Guest.Fuse;

namespace SEmigrate.Guest;

/// <summary>What this process and the QEMUs it starts create is their owner's alone: a file 0600, a
/// folder 0700 (umask 077). Guest RAM, kernels, initramfs, device state, stores, logs and keys are made
/// here, and no local user but root may read any of them.</summary>
public static class PrivateByDefault
{
    public static void Apply() => Libc.Umask(0x3F); // 077

    /// <summary>A folder made before (by an older version, or by hand) is made owner-only too.</summary>
    public static void Folder(string path) =>
        File.SetUnixFileMode(Directory.CreateDirectory(path).FullName, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
}
