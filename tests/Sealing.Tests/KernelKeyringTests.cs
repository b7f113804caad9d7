namespace SEmigrate.Sealing.Tests;

/// <summary>The source's data keys live in the kernel's keyring: found again by another process of the
/// host (a restarted worker), never on disk, and gone for good once erased.</summary>
public sealed class KernelKeyringTests
{
    private static readonly Guid Vm = Guid.NewGuid();

    [Fact]
    public void A_saved_key_loads_back_the_same_and_an_erased_one_is_gone()
    {
        var name = $"semigrate test {Guid.NewGuid():N}";
        using var key = DataKey.Generate();
        KernelKeyring.Save(name, key);
        try
        {
            Assert.True(KernelKeyring.Has(name));
            using var back = KernelKeyring.Load(name)!;
            using var opener = new PageOpener(back, Vm);
            using var sealer = key.CreateSealer(Vm, 1);
            var page = new byte[4096];
            page[7] = 42;
            var opened = new byte[4096];
            Assert.True(opener.TryOpen(sealer.Seal(3, 1, page), opened)); // the same key: it opens what the first sealed
            Assert.Equal(page, opened);
        }
        finally
        {
            Assert.True(KernelKeyring.Erase(name));
        }
        Assert.False(KernelKeyring.Has(name));
        Assert.Null(KernelKeyring.Load(name));
        Assert.False(KernelKeyring.Erase(name)); // erasing twice finds nothing
    }

    [Fact]
    public void A_key_is_found_by_its_own_name_only()
    {
        var name = $"semigrate test {Guid.NewGuid():N}";
        using var key = DataKey.Generate();
        KernelKeyring.Save(name, key);
        try
        {
            Assert.Null(KernelKeyring.Load(name + "x"));
            Assert.Null(KernelKeyring.Load($"semigrate test {Guid.NewGuid():N}"));
        }
        finally
        {
            KernelKeyring.Erase(name);
        }
    }

    [Fact]
    public void The_key_is_held_by_the_kernel_not_the_process_another_process_of_its_user_sees_it_listed()
    {
        var name = $"semigrate test {Guid.NewGuid():N}";
        using var key = DataKey.Generate();
        KernelKeyring.Save(name, key);
        try
        {
            // (a worker restarted mid-migration finds its key so; MigrationFaultTests restarts one). keyctl(1)
            // may not be installed: /proc/keys lists the keys a process of the user can view.
            using var child = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("cat", "/proc/keys") { RedirectStandardOutput = true })!;
            var listed = child.StandardOutput.ReadToEnd();
            child.WaitForExit();
            Assert.Contains(name, listed);
        }
        finally
        {
            KernelKeyring.Erase(name);
        }
    }
}
